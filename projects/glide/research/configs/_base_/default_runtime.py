# The core runtime, also registering the research components (losses, dataset transforms) the stages name.
_base_ = ['../../../configs/_base_/default_runtime.py']

custom_imports = dict(imports=['projects.glide', 'projects.glide.research'], allow_failed_imports=False)
