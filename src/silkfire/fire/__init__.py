"""FIRE (feedback-refinement) in Silkfire: records, FIRE-Bench metrics, teachers, students, dialogues, SFT sets.

Modules (each imports only what it needs; importing this package is free):

- :mod:`silkfire.fire.text` -- parse/format the ``Thought/Answer`` and ``Score/Feedback`` turns (``parse_score``).
- :mod:`silkfire.fire.records` -- read/write FIRE records exactly as published, validate a dialogue.
- :mod:`silkfire.fire.metrics` -- FIRE-Bench: free dialogue (AT, ADR, ATR, RR), fixed dialogue (BLEU, CIDEr, MAE).
- :mod:`silkfire.fire.teacher` -- the ``Teacher`` protocol, API and trained teachers, the factory from config.
- :mod:`silkfire.fire.oracle_teacher` -- the oracle teacher of the shapes world (scene graph -> score + safe feedback).
- :mod:`silkfire.fire.students` -- the ``Student`` protocol: HF VLM folder, API endpoint, scripted students.
- :mod:`silkfire.fire.dialogue` -- the student x teacher loop that writes FIRE records.
- :mod:`silkfire.fire.sft_data` -- student and teacher SFT sets from FIRE records.

Definitions of every metric: docs/fire_bench.md.
"""
