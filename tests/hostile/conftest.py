"""The command line with the finetune flow stubbed: what a configuration test runs instead of a flow."""

from __future__ import annotations

import pytest

import flows.finetune as finetune_module


@pytest.fixture
def cli(monkeypatch, capsys):
    """``cli(*argv)`` -> (exit status or None when the flow would have run, stderr, the configuration the flow got
    or None)."""
    started = []
    monkeypatch.setattr(finetune_module, "finetune", lambda config: started.append(config))
    # The stub calls no API: a configured URL keeps the command line from starting a server for it.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")

    def run(*argv: str):
        try:
            code = finetune_module.main(list(argv))
        except AttributeError:  # the stub returns no result to print: the flow would have run
            code = None
        return code, capsys.readouterr().err, started[-1] if started else None

    return run
