"""Process isolation, standard library only: what runs untrusted or hang-prone code for the graders.

- ``sandbox``: ``Sandbox`` / ``SandboxConfig``, one contained process per program (bubblewrap, else
  unshare + rlimits), run through ``sandbox_supervisor.py`` (started by path, before any import);
- ``uid_pool``: unprivileged uids handed out one program at a time, their leftovers killed;
- ``worker_pool``: ``TimeoutPool``, fresh interpreters that are killed, one at a time, when a call overruns.

``metastone.eval`` (the graders) stands on this package; it imports nothing from metastone.
"""
