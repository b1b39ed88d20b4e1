"""Stage drivers: one thin module per command (open the data, loop, write the stage folder).

The math lives in the libraries (``cams/``, ``refine/``, ``eval/``, ``methods/``); every driver follows
the stage-output contract of :mod:`weakseg.engine.stage` (record, skip, resume, refuse or ``--overwrite``).
"""
