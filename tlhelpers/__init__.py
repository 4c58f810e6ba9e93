"""tlhelpers: the package of the course "Transfer Learning for Image Classification in PyTorch".

Tier 1, the lesson code. Each module is generated from the cells marked ``#@save`` in the
notebooks that teach it (``python -m tlhelpers.tools.nbexport``); edit the notebook, not the module:

- ``pets``       notebooks 02-03  ``parse_breed``, ``PetsDataset``, transforms, ``denormalize``,
                                  ``show_batch``, random and stratified splits, DataLoaders
- ``models``     notebook 04      ``create_model`` (a new head), ``freeze_backbone``, ``unfreeze``,
                                  ``keep_bn_statistics``
- ``training``   notebook 05      ``get_default_device``, ``to_device``, ``DeviceDataLoader``,
                                  ``ImageClassificationBase``, ``PretrainedClassifier``, ``evaluate``,
                                  ``fit``, ``get_predictions``
- ``finetune``   notebook 06      ``fit_one_cycle``, ``stage_param_groups``, ``Phase``,
                                  ``FineTuneConfig``, ``fine_tune`` (the one fine-tuning recipe)
- ``cifar``      notebook 07      the CNN trained from scratch, flip test-time augmentation
- ``interpret``  notebook 08      ``top_losses``, ``most_confused``, ``grad_cam``
- ``config``     every notebook   the switches (``QUICK``, ``DATA_DIR``, ``OFFLINE`` ...; the only
                                  module that reads the environment), seeds, ImageNet statistics

Tier 2, the course's tooling, in ``tlhelpers.tools`` (notebooks use it and say so): downloads
(registry, verified downloads, safe extraction; notebook 01), samples (the real photos of quick
mode), images (one image loader), backbones and efficientnet_lite (the pretrained networks),
cache and gpu_data (fast data paths), cifar_data (CIFAR-10 sources), lr_finder, diagnostics,
plotting, widgets, export and predict (notebook 08), image_folder and train_folder (notebook 09),
fileio, nbexport, notebook and run_course.
"""

__version__ = "0.2.0"
