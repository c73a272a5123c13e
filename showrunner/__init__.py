"""Showrunner's entry points: the ``showrunner`` command, the launcher that starts a run, and the
HTTP service (``serve_app``). The only places where the domain (``pipelines``) and Ray
(``actors.remote``) meet; the import contracts in ``pyproject.toml`` keep it so."""
