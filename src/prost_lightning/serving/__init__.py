"""Serving trained adapters to rollouts on GPUs: a managed vLLM server (own venv, 127.0.0.1, one LoRA per role)."""

from .server import InferenceServer, InferenceServerError, serve_python, served_team, serving_available

__all__ = ["InferenceServer", "InferenceServerError", "serve_python", "served_team", "serving_available"]
