"""Reference CPU worker: a numpy Qwen2 engine behind the llorch-candled wire contract."""
