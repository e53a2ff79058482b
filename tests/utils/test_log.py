"""Library progress goes through logging: shown on stdout by default, quiet when the caller says so."""

from __future__ import annotations

import logging

from draftheads.utils.log import LIBRARY, logger


def test_progress_is_shown_on_the_current_stdout_and_can_be_silenced(capsys):
    log = logger("draftheads.eval.runner")
    log.info("dtype: float32")
    log.warning("no tree beats autoregressive decoding")
    assert capsys.readouterr().out == "dtype: float32\nwarning: no tree beats autoregressive decoding\n"
    library = logging.getLogger(LIBRARY)
    level = library.level
    try:
        library.setLevel(logging.WARNING)
        log.info("hidden")
        assert capsys.readouterr().out == ""
    finally:
        library.setLevel(level)
    assert logger("eval.runner") is log  # a name outside the library's is put under it
