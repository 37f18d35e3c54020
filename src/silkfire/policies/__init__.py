"""The policies that answer instructions for the silkie branch's `sample` stage: scripted world policies, local HF
VLM folders, OpenAI-compatible endpoints (:mod:`silkfire.policies.pool` builds the pool from config).
"""
