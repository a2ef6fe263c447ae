"""Recipes for training frameworks: SlimAdam in Hugging Face's ``Trainer`` (:mod:`.hf`) and PyTorch
Lightning (:mod:`.lightning`).

The library never imports this package; each module imports its framework itself, so slimbench works
without either installed (``pip install 'slimbench[models]'`` brings transformers, accelerate and lightning).
"""
