"""parazoo.arch: mixers, blocks, the language model and structures."""
