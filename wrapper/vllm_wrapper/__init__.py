"""vllm_wrapper: an OpenAI-compatible gateway in front of vLLM.

`app` is built on first access (``uvicorn vllm_wrapper:app``) so importing the
package does not read the environment."""

from __future__ import annotations

from typing import Any

__all__ = ["app", "create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "app":
        import sys

        from .config import ConfigError

        try:
            application = create_app()
        except ConfigError as exc:
            # Exit cleanly with the variable named instead of a traceback.
            print(f"vllm-wrapper: configuration error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        globals()["app"] = application
        return application
    raise AttributeError(f"module 'vllm_wrapper' has no attribute {name!r}")
