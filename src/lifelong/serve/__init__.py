"""Serving a finished run: learn one more task (``learn.py``), predict (``predict.py``), export (``export.py``).

Above ``engine/``: these load a run folder's newest checkpoint and reuse the runner's per-task path
and the scenario's test-time transform; nothing here trains or evaluates in its own way.
"""
