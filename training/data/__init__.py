"""Training data: offline photo-set builder (``training.data.fetch``) and datasets/loaders
(``training.data.dataset``). Import-free on purpose; import the submodules directly."""
