"""make mutate: hand-made mutants of the core, run against the request-path tests.

Not collected by pytest (no test_ modules, no test functions): ``python -m
tests.mutation.mutate`` runs it (see docs/reliability.md, "How strong the tests are").
"""
