"""Training data: offline photo-set builder (``dgae.data.fetch``) and datasets/loaders
(``dgae.data.dataset``). Import-free on purpose; import the submodules directly."""
