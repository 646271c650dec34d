"""The platform on one machine: real PostgreSQL, PgPool-II, Redis and Memcached processes.

Configured only through the renderers in ``components/conf`` (the files the GKE stack deploys).
Modules: ``system`` (the Debian packages), ``process`` (start, wait, stop by PID), ``ports``,
``postgres``, ``redis``, ``memcached`` and ``data_tier`` (the three together).

This package's ``__init__`` imports nothing: ``python3 -m stacks.local.system`` must run on a
fresh machine before the virtual environment exists.
"""
