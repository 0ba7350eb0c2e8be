"""Template families -> scenarios -> tasks (pure Python; no AppWorld import).

A family is one task shape composed from the sub-task vocabulary (subtasks.py). Each scenario
puts a family on one collection / app pairing; each scenario has 3 variants with other
parameters, other seeded data and another phrasing of the instruction. Splits are by scenario
(SCENARIOS below): held-out scenarios of families seen in training go to test_normal, and the
whole `count_and_message` family (a recombination of count + direct message, absent from
training) goes to test_challenge.

Families live in the registry ``FAMILIES``: the built-in ones below and those a family file adds
(:func:`load_family_file`, through ``add_family``), so a new task shape needs no edit here
(docs/miniworld.md, "Extending the mini-world").

`all_tasks(seed)` returns plain dicts that build.py turns into AppWorld task folders:
task_id, scenario, family, variant, split, difficulty, apps, instruction, seed (rows, see
catalog.py), question (bool), answer, expected ({"added", "deleted", "updated"} by "app.Model"),
subtasks ([{"description", "code"}]).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from . import catalog, subtasks  # noqa: F401  (building blocks a family file reaches through this module)
from . import subtasks as st
from .catalog import (
    ALARMS,
    CAST,
    COLLECTIONS,
    DRAFTS,
    NOTES,
    PLAYLISTS,
    PROJECTS,
    Collection,
    make_items,
    person_phone,
    seed_items,
    shuffled,
)

VARIANTS = 3
SPLITS = ("train", "dev", "test_normal", "test_challenge")


@dataclass(frozen=True)
class Family:
    """One task shape. ``make(key, rng, variant)`` returns the task's fields (see the module
    docstring) with one plan step per kind; ``check(key)`` says why a cell key cannot be built
    (None when it can), so a bad cell fails before the build rather than as a broken task."""

    name: str
    code: str  # lower-case alphanumeric, unique: the start of every task id of the family
    kinds: tuple[str, ...]  # sub-task kinds, in order: one plan step each
    difficulty: int
    make: Callable  # (key, rng, variant) -> partial task dict
    check: Callable[[str], str | None] = lambda key: None


def pick_counts(rng, lo_total=7, hi_total=11, lo_match=1, hi_match=4) -> tuple[int, int]:
    """(matching items, all items) of a seeded collection."""
    total = rng.randint(lo_total, hi_total)
    return rng.randint(lo_match, hi_match), total


def items_seed(coll: Collection, rng, keyword: str, n_match: int, n_total: int,
               match_flag: bool | None = None):
    """Items of ``coll`` (``n_match`` of them matching ``keyword``, each tagged ``match``) in a
    seeded order, and the seed rows that put them in the task's database."""
    matching, other = make_items(coll, rng, keyword, n_match, n_total, match_flag)
    tagged = [dict(item, match=True) for item in matching] + [dict(item, match=False)
                                                               for item in other]
    items = shuffled(rng, tagged)
    return items, seed_items(coll, rng, "i", items)


def draw_items(coll: Collection, rng, lo_match: int = 1, match_flag: bool | None = None):
    """(keyword, n_match, items, seed rows): a keyword of ``coll``, how many items match it, then the
    items; the draw every keyword family starts with (in this order, so a seed gives the same task)."""
    keyword = rng.choice(coll.keywords)
    n_match, n_total = pick_counts(rng, lo_match=lo_match)
    items, seed = items_seed(coll, rng, keyword, n_match, n_total, match_flag)
    return keyword, n_match, items, seed


def _refs(items: list[dict], which: Callable[[dict], bool], suffix: str = "") -> list[str]:
    return [f"@ref:i{i}{suffix}" for i, item in enumerate(items) if which(item)]


# ---------------------------------------------------------------- single-app question families
def make_count_keyword(key: str, rng, variant: int) -> dict:
    coll = COLLECTIONS[key]
    keyword, n_match, items, seed = draw_items(coll, rng)
    phrasing = (
        "How many {plural} {match} do I have in {app}?",
        "Count my {app} {plural} {match} and tell me the number.",
        "Tell me the number of {plural} in my {app} account {match}.",
    )[variant]
    return dict(
        instruction=phrasing.format(plural=coll.plural, match=coll.match_phrase(keyword),
                                    app=coll.app_title),
        apps=[coll.app], seed=seed, question=True, answer=n_match,
        subtasks=[st.login(coll.app), st.collect(coll), st.filter_keyword(coll, keyword),
                  st.complete_count()])


def make_count_flag(key: str, rng, variant: int) -> dict:
    coll = COLLECTIONS[key]
    keyword, n_match, items, seed = draw_items(coll, rng)
    answer = sum(1 for item in items if item["flag"])
    phrasing = (
        "How many of my {app} {plural} are {adj}?",
        "Count the {adj} {plural} in my {app} account.",
        "I'd like to know how many {plural} I have in {app} that are {adj}.",
    )[variant]
    return dict(
        instruction=phrasing.format(plural=coll.plural, adj=coll.flag_adjective,
                                    app=coll.app_title),
        apps=[coll.app], seed=seed, question=True, answer=answer,
        subtasks=[st.login(coll.app), st.collect(coll), st.filter_flag(coll), st.complete_count()])


# ---------------------------------------------------------------- single-app state families
def _deleted(coll: Collection, items: list[dict]) -> dict:
    deleted = {f"{coll.app}.{coll.model}": _refs(items, lambda i: i["match"])}
    if coll is PROJECTS:
        deleted["todoist.ProjectCollaboratorLink"] = _refs(items, lambda i: i["match"], "link")
    return deleted


def make_delete_keyword(key: str, rng, variant: int) -> dict:
    coll = COLLECTIONS[key]
    keyword, n_match, items, seed = draw_items(coll, rng)
    phrasing = (
        "Delete all my {app} {plural} {match}.",
        "Please remove every {noun} {match} from my {app} account.",
        "Clean up {app}: get rid of the {plural} {match}.",
    )[variant]
    return dict(
        instruction=phrasing.format(plural=coll.plural, noun=coll.noun, app=coll.app_title,
                                    match=coll.match_phrase(keyword)),
        apps=[coll.app], seed=seed, question=False, answer=None,
        expected={"deleted": _deleted(coll, items)},
        subtasks=[st.login(coll.app), st.collect(coll), st.filter_keyword(coll, keyword),
                  st.delete_each(coll), st.complete()])


def make_update_keyword(key: str, rng, variant: int) -> dict:
    coll = COLLECTIONS[key]
    keyword, n_match, items, seed = draw_items(coll, rng, match_flag=False)
    it = (f"all my {coll.app_title} {coll.plural} {coll.match_phrase(keyword)}",
          f"every {coll.noun} {coll.match_phrase(keyword)} in my {coll.app_title} account",
          "them")[variant]
    phrasing = (
        "{Verb}.",
        "Please {verb}.",
        "I want my {plural} {match} to be {adj} in {app}; {verb}.",
    )[variant]
    verb = coll.update_verb.format(it=it)
    if coll is PROJECTS:
        updated = {"todoist.ProjectCollaboratorLink": {
            ref: {"is_favorite": True} for ref in _refs(items, lambda i: i["match"], "link")}}
    else:
        updated = {f"{coll.app}.{coll.model}": {
            ref: {coll.flag: True} for ref in _refs(items, lambda i: i["match"])}}
    return dict(
        instruction=phrasing.format(plural=coll.plural, app=coll.app_title, verb=verb,
                                    Verb=verb[0].upper() + verb[1:], adj=coll.flag_adjective,
                                    match=coll.match_phrase(keyword)),
        apps=[coll.app], seed=seed, question=False, answer=None,
        expected={"updated": updated},
        subtasks=[st.login(coll.app), st.collect(coll), st.filter_keyword(coll, keyword),
                  st.update_flag_each(coll), st.complete()])


CREATE_FIELDS = {
    # collection -> (fields builder, expected-row builder)
    "notes": lambda rng: {"title": f"{rng.choice(NOTES.keywords)} {rng.choice(('Agenda', 'Memo', 'Outline', 'Wishlist'))}",
                          "content": rng.choice(("Call the bank", "Buy stamps", "Book a table",
                                                 "Renew passport", "Water the plants"))},
    "playlists": lambda rng: {"title": f"{rng.choice(PLAYLISTS.keywords)} {rng.choice(('Weekend', 'Morning', 'Roadtrip', 'Evening'))}"},
    "projects": lambda rng: {"name": f"{rng.choice(PROJECTS.keywords)} {rng.choice(('Budget', 'Timeline', 'Checklist', 'Planning'))}"},
    "alarms": lambda rng: {"time": f"{rng.randint(5, 22):02d}:{rng.choice(('00', '15', '30', '45'))}",
                           "label": f"{rng.choice(ALARMS.keywords)} {rng.choice(('Reminder', 'Alert', 'Start'))}"},
    "contacts": lambda rng: _new_contact(rng),
    "drafts": lambda rng: {"recipient_email_addresses": [rng.choice(CAST).email],
                           "subject": f"{rng.choice(DRAFTS.keywords)} {rng.choice(('Agenda', 'Recap', 'Budget'))}",
                           "body": rng.choice(BODIES)},
}


def _new_contact(rng) -> dict:
    first = rng.choice(("Ines", "Omar", "Yara", "Bruno", "Lea"))
    last = rng.choice(("Santos", "Keller", "Haddad", "Moretti"))
    return {"first_name": first, "last_name": last,
            "phone_number": f"5554{rng.randint(0, 999999):06d}",
            "email": f"{first.lower()}.{last.lower()}@example.net"}
CREATE_PHRASING = {
    "drafts": ("Create a Gmail draft to {to} with the subject '{subject}' and the body '{body}'.",
               "Save a draft email in Gmail for {to}: subject '{subject}', body '{body}'.",
               "Prepare (but do not send) a Gmail draft to {to} titled '{subject}' saying "
               "'{body}'."),
    "notes": ("Create a note in Simple Note titled '{title}' with the content '{content}'.",
              "Add a Simple Note note called '{title}'; its content should be '{content}'.",
              "Write a new note '{title}' in Simple Note saying '{content}'."),
    "playlists": ("Create a new Spotify playlist called '{title}'.",
                  "Make me a playlist named '{title}' on Spotify.",
                  "Add an empty playlist titled '{title}' to my Spotify library."),
    "projects": ("Create a Todoist project named '{name}'.",
                 "Add a new project called '{name}' in Todoist.",
                 "Start a project '{name}' in my Todoist account."),
    "alarms": ("Set an alarm on my phone for {time} labelled '{label}'.",
               "Create a phone alarm at {time} with the label '{label}'.",
               "Add an alarm '{label}' at {time} to my phone."),
    "contacts": ("Add {first_name} {last_name} ({phone_number}, {email}) to my phone contacts.",
                 "Save a new phone contact: {first_name} {last_name}, number {phone_number}, "
                 "email {email}.",
                 "Create a contact in my phone for {first_name} {last_name} with phone number "
                 "{phone_number} and email {email}."),
}


def make_create(key: str, rng, variant: int) -> dict:
    coll = COLLECTIONS[key]
    # A few existing items, so the world is not empty and collateral damage is detectable.
    n_total = rng.randint(3, 6)
    items, seed = items_seed(coll, rng, rng.choice(coll.keywords), 1, n_total)
    fields = CREATE_FIELDS[key](rng)
    while any(item["name"] in fields.values() for item in items):
        fields = CREATE_FIELDS[key](rng)
    expected_row = dict(fields, user_id=f"@sup:{coll.app}")
    if coll is DRAFTS:
        to = expected_row.pop("recipient_email_addresses")
        expected_row["recipient_ids"] = [f"@user:gmail:{email}" for email in to]
        fields_said = dict(fields, to=", ".join(to))
    else:
        fields_said = fields
    added = {f"{coll.app}.{coll.model}": [expected_row]}
    if coll is PROJECTS:
        added["todoist.ProjectCollaboratorLink"] = [{"user_id": "@sup:todoist"}]
    return dict(
        instruction=CREATE_PHRASING[key][variant].format(**fields_said),
        apps=[coll.app], seed=seed, question=False, answer=None, expected={"added": added},
        subtasks=[st.login(coll.app), st.create(coll, fields), st.complete()])


# ---------------------------------------------------------------- venmo aggregates
PAYMENT_WORDS = ("Pizza", "Rent", "Tickets", "Groceries", "Taxi", "Gift")
PAYMENT_FILLERS = ("night", "share", "for Friday", "split", "in June", "refund", "deposit")


def _venmo_seed(rng, person, n_person_sent, n_person_received):
    """Transactions between the supervisor and the cast; `person` gets the counted ones."""
    rows, others = [], [p for p in CAST if p is not person]
    plan = ([("sent", person)] * n_person_sent + [("received", person)] * n_person_received
            + [(rng.choice(("sent", "received")), rng.choice(others))
               for _ in range(rng.randint(4, 7))])
    rng.shuffle(plan)
    txns = []
    for i, (direction, who) in enumerate(plan):
        amount = round(rng.randint(500, 9000) / 100, 2)
        description = f"{rng.choice(PAYMENT_WORDS)} {rng.choice(PAYMENT_FILLERS)}"
        me, them = "@sup:venmo", f"@user:venmo:{who.email}"
        sender, receiver = (me, them) if direction == "sent" else (them, me)
        rows.append((f"t{i}", "venmo.Transaction", {"sender_id": sender, "receiver_id": receiver,
                                                    "amount": amount, "description": description}))
        txns.append({"direction": direction, "who": who, "amount": amount,
                     "description": description})
    return rows, txns


def make_venmo_aggregate(key: str, rng, variant: int) -> dict:
    person = rng.choice(CAST)
    common = [st.login("venmo"), st.collect_transactions()]
    if key == "sumsent":
        rows, txns = _venmo_seed(rng, person, rng.randint(1, 4), rng.randint(0, 2))
        answer = round(sum(t["amount"] for t in txns
                           if t["direction"] == "sent" and t["who"] is person), 2)
        phrasing = ("How much money have I sent to {name} on Venmo in total?",
                    "What is the total amount of my Venmo payments to {name}?",
                    "Add up everything I paid {name} through Venmo and tell me the total.")
        steps = [st.filter_field_equals("transactions", "transactions", ["receiver", "email"],
                                        person.email),
                 st.complete_with("round(sum(x[\"amount\"] for x in matches), 2)",
                                  "the total amount of the transactions in `matches`")]
    elif key == "maxreceived":
        rows, txns = _venmo_seed(rng, person, rng.randint(0, 2), rng.randint(1, 4))
        answer = max(t["amount"] for t in txns
                     if t["direction"] == "received" and t["who"] is person)
        phrasing = ("What is the largest amount {name} has ever sent me on Venmo?",
                    "Find the biggest Venmo payment I received from {name}; what was the amount?",
                    "Of the Venmo payments {name} sent me, how large was the largest one?")
        steps = [st.filter_field_equals("transactions", "transactions", ["sender", "email"],
                                        person.email),
                 st.complete_with("max(x[\"amount\"] for x in matches)",
                                  "the largest amount in `matches`")]
    elif key == "countdesc":
        rows, txns = _venmo_seed(rng, person, rng.randint(1, 3), rng.randint(1, 3))
        keyword = txns[0]["description"].split()[0]
        answer = sum(1 for t in txns if keyword in t["description"])
        person = None
        phrasing = ("How many of my Venmo transactions mention '{kw}' in the description?",
                    "Count the Venmo transactions whose description contains '{kw}'.",
                    "Tell me how many Venmo payments I have with '{kw}' in their description.")
        steps = [st.filter_field_contains("transactions", "transactions", "description", keyword),
                 st.complete_count()]
        return dict(instruction=phrasing[variant].format(kw=keyword), apps=["venmo"], seed=rows,
                    question=True, answer=answer, subtasks=common + steps)
    else:
        raise ValueError(key)
    return dict(instruction=phrasing[variant].format(name=person.name), apps=["venmo"], seed=rows,
                question=True, answer=answer, subtasks=common + steps)


# ---------------------------------------------------------------- messages and payments
MESSAGES = ("Running 10 minutes late", "Dinner is at 7", "Thanks for yesterday",
            "Call me when you can", "See you at the station")
SUBJECTS = ("Weekend plans", "Quick question", "Meeting notes", "Trip details")
BODIES = ("Are you free on Saturday?", "Please send me the slides.", "The tickets are booked.",
          "Let's meet at noon.")
MONEY_REASONS = ("Concert tickets", "Dinner split", "Utility bill", "Book club fee")


def _action(action: str, rng, to_email: str, to_phone: str, to_said: str, receiver_email: str):
    """(step, expected added rows, instruction fragment) of one message / money action."""
    if action == "pay":
        amount, reason = rng.choice((15, 20, 25, 32.5, 40, 48)), rng.choice(MONEY_REASONS)
        return (st.pay(to_email, to_said, amount, reason),
                {"venmo.Transaction": [{"sender_id": "@sup:venmo",
                                        "receiver_id": f"@user:venmo:{receiver_email}",
                                        "amount": float(amount), "description": reason}]},
                dict(amount=f"{amount:g}", reason=reason))
    if action == "request":
        amount, reason = rng.choice((12, 18, 27.5, 30, 45, 60)), rng.choice(MONEY_REASONS)
        return (st.request(to_email, to_said, amount, reason),
                {"venmo.PaymentRequest": [{"sender_id": "@sup:venmo",
                                           "receiver_id": f"@user:venmo:{receiver_email}",
                                           "amount": float(amount), "description": reason}]},
                dict(amount=f"{amount:g}", reason=reason))
    if action == "text":
        message = rng.choice(MESSAGES)
        return (st.text(to_phone, to_said, f'"{message}"', f"'{message}'"),
                {"phone.GlobalTextMessage": [{"sender_id": "@sup:phone",
                                              "receiver_id": f"@user:phone:{receiver_email}",
                                              "message": message}]},
                dict(message=message))
    if action == "email":
        subject, body = rng.choice(SUBJECTS), rng.choice(BODIES)
        return (st.email(to_email, to_said, subject, f'"{body}"', f"'{body}'"),
                {"gmail.Email": [{"sender_id": "@sup:gmail",
                                  "recipient_ids": [f"@user:gmail:{receiver_email}"],
                                  "subject": subject, "body": body}]},
                dict(subject=subject, body=body))
    raise ValueError(action)


ACTION_APP = {"pay": "venmo", "request": "venmo", "text": "phone", "email": "gmail"}
LOOKUP_PHRASING = {
    "pay": ("Send ${amount} to my {rel} on Venmo for '{reason}'.",
            "Pay my {rel} ${amount} via Venmo with the note '{reason}'.",
            "Venmo my {rel} ${amount}; the description should be '{reason}'."),
    "request": ("Request ${amount} from my {rel} on Venmo for '{reason}'.",
                "Ask my {rel} for ${amount} through a Venmo payment request, note '{reason}'.",
                "Create a Venmo request of ${amount} to my {rel} with the description '{reason}'."),
    "text": ("Text my {rel} '{message}'.",
             "Send my {rel} a text message saying '{message}'.",
             "Let my {rel} know by text: '{message}'."),
    "email": ("Email my {rel} with the subject '{subject}' and the body '{body}'.",
              "Send my {rel} an email titled '{subject}' that says '{body}'.",
              "Write to my {rel} on Gmail: subject '{subject}', body '{body}'."),
}
DIRECT_PHRASING = {
    "pay": ("Send ${amount} to {email} on Venmo for '{reason}'.",
            "Pay {name} ({email}) ${amount} via Venmo with the note '{reason}'.",
            "Venmo ${amount} to {email}; the description should be '{reason}'."),
    "request": ("Request ${amount} from {email} on Venmo for '{reason}'.",
                "Ask {name} ({email}) for ${amount} with a Venmo request, note '{reason}'.",
                "Create a Venmo request of ${amount} to {email} with the description '{reason}'."),
    "text": ("Text {phone} '{message}'.",
             "Send {name} a text at {phone} saying '{message}'.",
             "Message {phone} by text: '{message}'."),
    "email": ("Email {email} with the subject '{subject}' and the body '{body}'.",
              "Send {name} ({email}) an email titled '{subject}' that says '{body}'.",
              "Write to {email} on Gmail: subject '{subject}', body '{body}'."),
}


def make_lookup_send(action: str, rng, variant: int) -> dict:
    person = rng.choice(CAST)
    app = ACTION_APP[action]
    action_step, added, said = _action(action, rng, 'person["email"]', 'person["phone_number"]',
                                       "`person`", person.email)
    apps = ["phone"] if app == "phone" else ["phone", app]
    return dict(
        instruction=LOOKUP_PHRASING[action][variant].format(rel=person.relationship, **said),
        apps=apps, seed=[], question=False, answer=None, expected={"added": added},
        subtasks=[st.login(*apps), st.find_person(person.relationship), action_step,
                  st.complete()])


def make_direct_send(action: str, rng, variant: int) -> dict:
    person = rng.choice(CAST)
    app = ACTION_APP[action]
    phone = person_phone(person)
    to_said = f"'{phone}'" if action == "text" else f"'{person.email}'"
    action_step, added, said = _action(action, rng, f'"{person.email}"', f'"{phone}"', to_said,
                                       person.email)
    return dict(
        instruction=DIRECT_PHRASING[action][variant].format(
            name=person.name, email=person.email, phone=phone, **said),
        apps=[app], seed=[], question=False, answer=None, expected={"added": added},
        subtasks=[st.login(app), action_step, st.complete()])


LOG_PHRASING = {
    "pay": ("Send ${amount} to my {rel} on Venmo for '{reason}', then log it in a Simple Note "
            "note titled '{title}' with the content '{reason}'.",
            "Pay my {rel} ${amount} via Venmo (note '{reason}') and record it in a new Simple "
            "Note note '{title}' whose content is '{reason}'.",
            "Venmo my {rel} ${amount} for '{reason}' and keep a Simple Note note '{title}' "
            "saying '{reason}'."),
    "request": ("Request ${amount} from my {rel} on Venmo for '{reason}', then log it in a "
                "Simple Note note titled '{title}' with the content '{reason}'.",
                "Ask my {rel} for ${amount} with a Venmo request (note '{reason}') and record it "
                "in a new Simple Note note '{title}' whose content is '{reason}'.",
                "Send my {rel} a Venmo request of ${amount} for '{reason}' and keep a Simple "
                "Note note '{title}' saying '{reason}'."),
    "email": ("Email my {rel} with the subject '{subject}' and the body '{body}', then log it in "
              "a Simple Note note titled '{title}' with the content '{subject}'.",
              "Send my {rel} an email titled '{subject}' that says '{body}' and record it in a "
              "new Simple Note note '{title}' whose content is '{subject}'.",
              "Write to my {rel} on Gmail (subject '{subject}', body '{body}') and keep a "
              "Simple Note note '{title}' saying '{subject}'."),
}


def make_lookup_send_log(action: str, rng, variant: int) -> dict:
    """Three apps: find the person in phone, act in venmo/gmail, log it in simple_note."""
    person = rng.choice(CAST)
    app = ACTION_APP[action]
    action_step, added, said = _action(action, rng, 'person["email"]', 'person["phone_number"]',
                                       "`person`", person.email)
    title = f"{rng.choice(('Sent to', 'Done for', 'Log for'))} {person.first_name}"
    content = said.get("reason") or said["subject"]
    added["simple_note.Note"] = [{"title": title, "content": content,
                                  "user_id": "@sup:simple_note"}]
    apps = ["phone", app, "simple_note"]
    return dict(
        instruction=LOG_PHRASING[action][variant].format(rel=person.relationship, title=title,
                                                         **said),
        apps=apps, seed=[], question=False, answer=None, expected={"added": added},
        subtasks=[st.login(*apps), st.find_person(person.relationship), action_step,
                  st.create(NOTES, {"title": title, "content": content}), st.complete()])


# ---------------------------------------------------------------- cross-app families
NOTE_TITLES = ("Overview", "Summary", "Inventory", "Roundup")


def make_list_to_note(key: str, rng, variant: int) -> dict:
    coll = COLLECTIONS[key]
    keyword, n_match, items, seed = draw_items(coll, rng, lo_match=2)
    title = f"{keyword.capitalize()} {rng.choice(NOTE_TITLES)}"
    names = [item["name"] for item in items if item["match"]]
    phrasing = (
        "Make a Simple Note note titled '{title}' listing the {word}s of my {app} {plural} "
        "{match}, separated by commas.",
        "Collect the {word}s of all {app} {plural} {match} into a new Simple Note note called "
        "'{title}' (comma separated).",
        "I need a note '{title}' in Simple Note whose content is the comma-separated {word}s of "
        "my {plural} {match} in {app}.",
    )[variant]
    return dict(
        instruction=phrasing.format(title=title, word=coll.name_word, app=coll.app_title,
                                    plural=coll.plural, match=coll.match_phrase(keyword)),
        apps=[coll.app, "simple_note"], seed=seed, question=False, answer=None,
        expected={"added": {"simple_note.Note": [{
            "title": title, "user_id": "@sup:simple_note", "content": {"csv_set": names}}]}},
        subtasks=[st.login(coll.app, "simple_note"), st.collect(coll),
                  st.filter_keyword(coll, keyword), st.note_from_matches(coll, title),
                  st.complete()])


def make_count_and_message(key: str, rng, variant: int) -> dict:
    code, action = key.split("-")
    coll = COLLECTIONS[code]
    keyword, n_match, items, seed = draw_items(coll, rng)
    person = rng.choice(CAST)
    phone = person_phone(person)
    to_said = f"'{phone}'" if action == "text" else f"'{person.email}'"
    if action == "text":
        action_step = st.text(f'"{phone}"', to_said, "str(len(matches))",
                              "the number of items in `matches`")
        added = {"phone.GlobalTextMessage": [{"sender_id": "@sup:phone",
                                              "receiver_id": f"@user:phone:{person.email}",
                                              "message": str(n_match)}]}
        tail = "Text {phone} just that number."
    else:
        subject = f"{keyword.capitalize()} count"
        action_step = st.email(f'"{person.email}"', to_said, subject, "str(len(matches))",
                               "the number of items in `matches`")
        added = {"gmail.Email": [{"sender_id": "@sup:gmail",
                                  "recipient_ids": [f"@user:gmail:{person.email}"],
                                  "subject": subject, "body": str(n_match)}]}
        tail = "Email it to {email} with the subject '" + subject + "' and only the number as body."
    head = ("Count my {app} {plural} {match}. ",
            "Find out how many {plural} {match} I have in {app}. ",
            "How many {app} {plural} {match} do I have? ")[variant]
    apps = [coll.app] if coll.app == ACTION_APP[action] else [coll.app, ACTION_APP[action]]
    return dict(
        instruction=(head + tail).format(app=coll.app_title, plural=coll.plural,
                                         match=coll.match_phrase(keyword), phone=phone,
                                         email=person.email),
        apps=apps, seed=seed, question=False, answer=None, expected={"added": added},
        subtasks=[st.login(*apps), st.collect(coll), st.filter_keyword(coll, keyword),
                  action_step, st.complete()])


class CellError(ValueError):
    """A scenario cell the families cannot build a sound task for; the message names the cell and why."""


class FamilyError(ValueError):
    """A family that cannot be registered (a clash, a bad code) or a family file that registers none."""


# ---------------------------------------------------------------- what a cell key must be
VENMO_AGGREGATES = ("sumsent", "countdesc", "maxreceived")
MESSAGE_ACTIONS = ("text", "email")  # what count_and_message can send


def collection_problem(key: str, *needed: str) -> str | None:
    """Why ``key`` is not a collection with the ``Collection`` fields ``needed`` (None when it is)."""
    coll = COLLECTIONS.get(key)
    if coll is None:
        return f"'{key}' is not a collection (known: {', '.join(sorted(COLLECTIONS))})"
    missing = [name for name in needed if not getattr(coll, name)]
    if missing:
        return f"the {coll.plural} collection has no {' / '.join(missing)} (catalog.py), which this family needs"
    return None


def choice_problem(key: str, known, what: str) -> str | None:
    """Why ``key`` is not one of ``known`` (None when it is); ``what`` names the kind of key."""
    return None if key in known else f"'{key}' is not a {what} this family knows (known: {', '.join(sorted(known))})"


def _count_and_message_problem(key: str) -> str | None:
    code, _, action = key.partition("-")
    return (collection_problem(code) or choice_problem(action, MESSAGE_ACTIONS, "message action")
            if action else f"'{key}' is not '<collection>-<text|email>'")


# ---------------------------------------------------------------- the registry
FAMILIES: dict[str, Family] = {}


def add_family(family: Family) -> Family:
    """Register a family (the built-in ones below, and those of extension files, come through here)."""
    if not isinstance(family, Family):
        raise FamilyError(f"add_family takes a families.Family, got {type(family).__name__}")
    problems = []
    if not family.name.isidentifier():
        problems.append("its name must be a Python-style identifier (letters, digits, '_')")
    if not (family.code.isalnum() and family.code.islower()):
        problems.append(f"its code '{family.code}' must be lower-case letters and digits (task ids hold "
                        "exactly one '_')")
    if not family.kinds or not all(isinstance(kind, str) and kind for kind in family.kinds):
        problems.append("its kinds must name one sub-task kind per plan step, e.g. ('login', 'collect', 'count')")
    if not isinstance(family.difficulty, int) or family.difficulty < 1:
        problems.append(f"its difficulty must be an integer >= 1, got {family.difficulty!r}")
    if not callable(family.make) or not callable(family.check):
        problems.append("make and check must be functions")
    if family.name in FAMILIES:
        problems.append("a family of that name is already registered")
    clash = next((f.name for f in FAMILIES.values() if f.code == family.code), None)
    if clash:
        problems.append(f"its code '{family.code}' is taken by '{clash}' (scenario ids would collide)")
    if problems:
        raise FamilyError(f"family '{family.name}': " + "; ".join(problems))
    FAMILIES[family.name] = family
    return family


for _family in (
    Family("count_keyword", "ckw", ("login", "collect", "filter", "count"), 1, make_count_keyword,
           lambda key: collection_problem(key)),
    Family("count_flag", "cfl", ("login", "collect", "filter", "count"), 1, make_count_flag,
           lambda key: collection_problem(key, "flag", "flag_adjective")),
    Family("delete_keyword", "dkw", ("login", "collect", "filter", "delete", "complete"), 2,
           make_delete_keyword, lambda key: collection_problem(key, "delete_api")),
    Family("update_keyword", "ukw", ("login", "collect", "filter", "update", "complete"), 2,
           make_update_keyword, lambda key: collection_problem(key, "flag", "update_verb", "update_api")),
    Family("create_item", "cre", ("login", "create", "complete"), 1, make_create,
           lambda key: collection_problem(key, "create_api") or choice_problem(
               key, CREATE_FIELDS.keys() & CREATE_PHRASING.keys(), "collection to create in")),
    Family("venmo_aggregate", "vag", ("login", "collect", "filter", "aggregate"), 2,
           make_venmo_aggregate, lambda key: choice_problem(key, VENMO_AGGREGATES, "Venmo aggregate")),
    Family("direct_send", "dsd", ("login", "send", "complete"), 1, make_direct_send,
           lambda key: choice_problem(key, DIRECT_PHRASING.keys() & ACTION_APP.keys(), "send action")),
    Family("lookup_send", "lsd", ("login", "lookup", "send", "complete"), 2, make_lookup_send,
           lambda key: choice_problem(key, LOOKUP_PHRASING.keys() & ACTION_APP.keys(), "send action")),
    Family("lookup_send_log", "lsl", ("login", "lookup", "send", "create", "complete"), 3,
           make_lookup_send_log,
           lambda key: choice_problem(key, LOG_PHRASING.keys() & ACTION_APP.keys(), "send action")),
    Family("list_to_note", "ltn", ("login", "collect", "filter", "create", "complete"), 3,
           make_list_to_note, lambda key: collection_problem(key)),
    Family("count_and_message", "cam", ("login", "collect", "filter", "send", "complete"), 3,
           make_count_and_message, _count_and_message_problem),
):
    add_family(_family)


# ---------------------------------------------------------------- family files (extensions)
def load_family_file(path: str | os.PathLike) -> list[str]:
    """Run a family file's ``register(families)``, which adds its families with
    ``families.add_family``; returns their names. The file gets this module as the argument (its
    building blocks: ``Family``, ``subtasks``, ``catalog``, ``items_seed``, ...), so it imports
    nothing of the package and loads alike in the main venv and in the AppWorld builder."""
    path = Path(path)
    before = set(FAMILIES)
    try:
        spec = importlib.util.spec_from_file_location(f"miniworld_extension_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # the file is the user's: whatever it raises is reported, named
        raise FamilyError(f"{path}: cannot load the family file ({type(error).__name__}: {error})") from None
    register = getattr(module, "register", None)
    if not callable(register):
        raise FamilyError(f"{path}: a family file defines register(families), which calls "
                          "families.add_family(families.Family(...)) for each family")
    try:
        register(sys.modules[__name__])
    except FamilyError as error:
        raise FamilyError(f"{path}: {error}") from None
    except Exception as error:
        raise FamilyError(f"{path}: register() failed ({type(error).__name__}: {error})") from None
    added = sorted(set(FAMILIES) - before)
    if not added:
        raise FamilyError(f"{path}: register() added no family; call families.add_family(...)")
    return added


@contextmanager
def family_files(paths=()):
    """The registry with the families of ``paths`` added, restored on exit (a check in a long-lived
    process, such as `prost world build` reading an extension, leaves no trace)."""
    saved = dict(FAMILIES)
    try:
        for path in paths:
            load_family_file(path)
        yield FAMILIES
    finally:
        FAMILIES.clear()
        FAMILIES.update(saved)


# (family, scenario key, split). Held-out cells are chosen so that each held-out scenario's app
# and sub-task kinds all appear in training elsewhere in the grid.
SCENARIOS = (
    ("count_keyword", "notes", "train"), ("count_keyword", "playlists", "train"),
    ("count_keyword", "contacts", "train"), ("count_keyword", "projects", "dev"),
    ("count_keyword", "drafts", "train"), ("count_keyword", "alarms", "test_normal"),
    ("count_flag", "notes", "train"), ("count_flag", "projects", "train"),
    ("count_flag", "alarms", "train"), ("count_flag", "playlists", "test_normal"),
    ("delete_keyword", "notes", "train"), ("delete_keyword", "projects", "train"),
    ("delete_keyword", "alarms", "train"), ("delete_keyword", "drafts", "train"),
    ("delete_keyword", "contacts", "dev"),
    ("delete_keyword", "playlists", "test_normal"),
    ("update_keyword", "playlists", "train"), ("update_keyword", "alarms", "train"),
    ("update_keyword", "notes", "train"), ("update_keyword", "projects", "test_normal"),
    ("create_item", "playlists", "train"), ("create_item", "projects", "train"),
    ("create_item", "alarms", "train"), ("create_item", "drafts", "train"),
    ("create_item", "notes", "dev"),
    ("create_item", "contacts", "test_normal"),
    ("venmo_aggregate", "sumsent", "train"), ("venmo_aggregate", "countdesc", "train"),
    ("venmo_aggregate", "maxreceived", "test_normal"),
    ("direct_send", "text", "train"), ("direct_send", "email", "train"),
    ("direct_send", "pay", "train"), ("direct_send", "request", "test_normal"),
    ("lookup_send", "pay", "train"), ("lookup_send", "email", "train"),
    ("lookup_send", "request", "train"), ("lookup_send", "text", "test_normal"),
    ("lookup_send_log", "pay", "train"), ("lookup_send_log", "email", "train"),
    ("lookup_send_log", "request", "test_normal"),
    ("list_to_note", "playlists", "train"), ("list_to_note", "contacts", "train"),
    ("list_to_note", "drafts", "train"),
    ("list_to_note", "projects", "dev"), ("list_to_note", "alarms", "test_normal"),
    ("count_and_message", "notes-email", "test_challenge"),
    ("count_and_message", "alarms-text", "test_challenge"),
    ("count_and_message", "playlists-email", "test_challenge"),
    ("count_and_message", "projects-text", "test_challenge"),
    ("count_and_message", "drafts-text", "test_challenge"),
)



def check_grid(scenarios=None, splits=SPLITS) -> None:
    """Refuse, before anything is built, a grid with an unknown family, a duplicate or unsupported
    cell, or a split that would get task folders but no ``datasets/<split>.txt``."""
    seen = set()
    for family_name, key, split in SCENARIOS if scenarios is None else scenarios:
        cell = f"cell ({family_name}, {key}, {split})"
        if family_name not in FAMILIES:
            raise CellError(f"{cell}: no family '{family_name}' (known: {', '.join(sorted(FAMILIES))})")
        if split not in splits:
            raise CellError(f"{cell}: split '{split}' is not one of {', '.join(splits)}; its tasks would "
                            "have no datasets/<split>.txt")
        if (family_name, key) in seen:
            raise CellError(f"{cell}: the cell appears twice; its task ids would collide")
        seen.add((family_name, key))
        problem = FAMILIES[family_name].check(key)
        if problem:
            raise CellError(f"{cell}: {problem}")


def scenario_id(family: Family, key: str) -> str:
    """AppWorld task ids hold exactly one '_' (scenario_variant), so ids are alphanumeric."""
    return family.code + "".join(ch for ch in key if ch.isalnum())


TASK_FIELDS = ("instruction", "apps", "seed", "question", "answer", "subtasks")


def make_task(family: Family, key: str, rng, variant: int, cell: str) -> dict:
    """``family.make``, checked: a family that raises or returns a malformed task fails here, with
    the cell named, instead of as a broken task folder."""
    try:
        task = family.make(key, rng, variant)
    except Exception as error:  # an extension family's code is the user's: name the cell
        raise CellError(f"{cell}: {family.name}.make failed ({type(error).__name__}: {error})") from None
    missing = [name for name in TASK_FIELDS if not isinstance(task, dict) or name not in task]
    if missing:
        raise CellError(f"{cell}: {family.name}.make returned no {', '.join(missing)}")
    steps = task["subtasks"]
    if (not isinstance(steps, list) or len(steps) != len(family.kinds)
            or not all(isinstance(s, dict) and set(s) == {"description", "code"} for s in steps)):
        raise CellError(f"{cell}: {family.name}.make must return one subtasks.step(description, code) per kind "
                        f"({len(family.kinds)}: {', '.join(family.kinds)})")
    return task


def all_tasks(seed: int = 0, cells: tuple = (), splits: tuple = ()) -> list[dict]:
    """Every task of the grid: ``SCENARIOS`` plus extension ``cells`` ((family, key, split) each),
    whose splits may be ``SPLITS`` or the extension's new ``splits``."""
    grid = (*SCENARIOS, *(tuple(cell) for cell in cells))
    check_grid(grid, (*SPLITS, *splits))
    tasks = []
    for family_name, key, split in grid:
        family = FAMILIES[family_name]
        scenario = scenario_id(family, key)
        for variant in range(VARIANTS):
            rng = random.Random(f"{seed}:{scenario}:{variant}")
            task = make_task(family, key, rng, variant, f"cell ({family_name}, {key}, {split})")
            task.setdefault("expected", {})
            task.update(task_id=f"{scenario}_{variant + 1}", scenario=scenario,
                        family=family.name, variant=variant + 1, split=split,
                        difficulty=family.difficulty)
            tasks.append(task)
    return tasks
