"""The HTTP services: the score service (``score_server``), the policy service (``policy_server``), what they
share (``common``) and a service as a process (``process``)."""
