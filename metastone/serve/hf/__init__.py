"""Hugging Face engines: the SPRM scorer (``scorer.HFScorer``) and the policy (``policy.HFPolicy``)."""
