"""Everything that talks to a model: in-process (transformers, batched) or a server (TGI, vLLM, transformers
serve, another OpenAI-compatible one), and the servable-folder helpers that the training side and the arena both
need. ``finetune/`` and ``demo/`` meet only here and at the saved model folder."""
