"""Silkfire: VLFeedback -- records, AI/oracle judges, preference pairs (the Silkie branch's data side).

- :mod:`silkfire.vlfeedback.records`: read VLFeedback files as published (either completions layout) -> row form.
- :mod:`silkfire.vlfeedback.pair_rule`: the VLFeedback pair rule (mean of 3 aspects, ties dropped, "N/A" skipped).
- :mod:`silkfire.vlfeedback.judges`: the ``Judge`` protocol, the oracle judge (scene graph) and the API judge
  (OpenAI-compatible, cached), and ``make_judge(cfg)``.
"""
