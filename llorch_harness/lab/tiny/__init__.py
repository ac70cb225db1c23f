"""The tiny models' parts; ``llorch_harness.lab.tinymodel`` is the entry point.

``weights``: random weights, safetensors bytes, the repo writer; ``qwen``: the Qwen2.5
vocabulary's build; ``corpus``: the small Qwen2 build; ``spm``: a Llama-style
SentencePiece BPE trained on the corpus; ``archs``: the Llama, Mistral and Phi-3 builds.
"""
