"""Prompt studies (LIMA's Figures 1 and 3 and its safety study): a prompt set, answers generated once per
(source, prompt, decoding) before raters arrive, and a person's (or the judge's) rating of each item.

``records`` is the one shape between the store and the report: the store yields these, the report reads only these.
``spec`` reads a study's YAML file, ``generate`` pre-generates its answers (``python -m demo.studies generate``),
``tables`` holds its tables and events in the ratings store, ``store`` writes and reads them (the blind order, the
checks, the records), ``api`` is what a study's page calls, ``judging`` is ``python -m demo.judge study``.
"""
