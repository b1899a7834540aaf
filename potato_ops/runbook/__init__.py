"""The notebook-facing layer: each runbook notebook cell is one call here plus its display.

Modules, one per concern:

- ``params``: check a notebook's parameters (``check_*``), raising ``RunbookParameterError``;
- ``session``: open the database named by an environment variable; the safety checklist;
- ``display``: how steps show themselves (``Shown``), ``Chart`` and ``Verdict``;
- ``scan``: the invariant scan, timezones and run lengths shared by several notebooks;
- ``user`` (01, 02), ``bulk`` (03), ``timezone`` (04), ``recovery`` (05), ``restore`` (06),
  ``audit`` (07), ``troubleshoot`` (08): each procedure's steps and its verdict.
"""
