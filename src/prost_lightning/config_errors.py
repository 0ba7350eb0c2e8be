"""One short message for a configuration mistake of `prost fit / validate / test`.

jsonargparse answers a wrong key or value with its usage text and a nested explanation; these
functions turn that into one line naming the key, where it came from (the command line, or the
YAML file and line) and the fix: the closest valid key, or the valid names of a choice.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml

from prost_lightning.errors import ConfigError

_UNKNOWN_KEY = (
    re.compile(r"does not accept option '([^']+)'"),
    re.compile(r"No action for key \"([^\"]+)\""),
    re.compile(r"Key \"([^\"]+)\" is not expected"),
    re.compile(r"[Uu]nrecognized arguments: (\S+)"),
    re.compile(r"Option '([^']+)' is not accepted"),
)
_LINKED = re.compile(r"argument (\S+) --> (\S+):")
_NO_VALUE = re.compile(r"argument (\S+): expected one argument")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_EXPECTED = re.compile(r"Expected a (.+?)\. Got value: (.*)")
_LITERAL = re.compile(r"Literal\[(.*)\]")


def config_files(argv: list[str]) -> list[str]:
    """The files given with --config / -c, in order (later ones override earlier ones)."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def check_config_files(argv: list[str]) -> None:
    """Refuse a --config file that is missing, not a file, or not YAML, with file:line."""
    for name in config_files(argv):
        path = Path(name)
        if not path.exists():
            raise ConfigError(f"--config {name}: no such file")
        if not path.is_file():
            raise ConfigError(f"--config {name}: is not a regular file; give a YAML file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"--config {name}: not UTF-8; re-save the file as UTF-8") from None
        try:
            yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{name}{line}: YAML syntax error: {e.problem or e.context}; fix that line") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{name}: YAML syntax error: {e}") from None


def yaml_location(files: list[str], key: str) -> str | None:
    """``file:line`` of a dotted key in the last config file that sets it."""
    for name in reversed(files):
        try:
            node = yaml.compose(Path(name).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            continue
        line = _key_line(node, key.split("."))
        if line is not None:
            return f"{name}:{line}"
    return None


def _key_line(node, parts: list[str]) -> int | None:
    for i, part in enumerate(parts):
        if not isinstance(node, yaml.MappingNode):
            return None
        for key_node, value_node in node.value:
            if key_node.value == part:
                if i == len(parts) - 1:
                    return key_node.start_mark.line + 1
                node = value_node
                break
        else:
            return None
    return None


def describe_argument_error(message: str, argv: list[str], valid_keys: list[str]) -> str:
    """One line for a jsonargparse parse error: key, origin, fix."""
    files = config_files(argv)
    linked = _LINKED.search(message)
    if linked:
        return f"{linked.group(2)}: follows {linked.group(1)}; set --{linked.group(1)} instead"
    no_value = _NO_VALUE.search(message)
    if no_value:
        option = no_value.group(1)
        return (f"{option}: needs a value (a negative number needs the = form, e.g. {option}=-1); "
                "see `prost fit --help`")
    for pattern in _UNKNOWN_KEY:
        found = pattern.search(message)
        if found:
            key = found.group(1).lstrip("-")
            prefix = ".".join(k for k in _PARSER_KEY.findall(message) if k != key)
            key = f"{prefix}.{key}" if prefix and not key.startswith(prefix + ".") else key
            close = difflib.get_close_matches(key, valid_keys, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else "see `prost fit --help` for the valid keys"
            return f"{_origin(key, argv, files)}unknown key '{key}'; {hint}"
    keys = _PARSER_KEY.findall(message)
    if keys:
        key = keys[0]
        for inner in keys[1:]:
            key = inner if inner.startswith(key + ".") else f"{key}.{inner}"
        expected = _EXPECTED.findall(message)
        if expected:
            wanted, got = expected[-1]
            literal = _LITERAL.search(wanted)
            if literal:
                names = " | ".join(n.strip().strip("'\"") for n in literal.group(1).split(","))
                return f"{_origin(key, argv, files)}{key}: '{got}' is not one of {names}"
            return f"{_origin(key, argv, files)}{key}: expected {wanted.strip('<>').replace('class ', '')}, got '{got}'"
        detail = next((line.strip() for line in message.splitlines()[1:] if line.strip()), "")
        return f"{_origin(key, argv, files)}{key}: {detail}".rstrip(": ")
    first = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
    return f"{first}; see `prost fit --help`"


def _origin(key: str, argv: list[str], files: list[str]) -> str:
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in argv):
        return ""
    location = yaml_location(files, key)
    return f"{location}: " if location else ""
