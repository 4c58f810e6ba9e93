"""tlhelpers: the helpers of the course "Transfer Learning for Image Classification in PyTorch".

Each notebook teaches a piece and imports it from here, so the logic lives in one place:

- ``config``      quick mode (``TLH_QUICK``), data folder (``TLH_DATA_DIR``), seeds
- ``notebook``    the setup cell every notebook opens with
- ``data``        dataset registry, verified downloads, safe extraction        (notebook 01)
- ``samples``     generated sample data for quick mode, in the real layouts   (notebook 01)
- ``pets``        ``PetsDataset``, transforms, splits, DataLoaders            (notebooks 02-03)
- ``plotting``    ``show_batch`` and the course's figures
- ``models``      pretrained backbones, new heads, freezing                   (notebook 04)
- ``device``      ``get_default_device``, ``to_device``, ``DeviceDataLoader`` (notebook 05)
- ``train``       ``evaluate``, ``fit``, ``fit_one_cycle``, ``lr_find``       (notebooks 05-06)
- ``cache``       decode-once uint8 image cache for the fast Pets path        (notebook 05, benchmarks)
- ``gpu_data``    a GPU-resident batch loader: augmentation on the device     (notebook 07)
- ``cifar``       CIFAR-10 sources, the scratch CNN, gradual unfreezing       (notebook 07)
- ``interpret``   top losses, most confused, confusion matrices, Grad-CAM     (notebook 08)
- ``export``      one self-describing file: weights, classes, preprocessing   (notebook 08)
- ``predict``     ``python -m tlhelpers.tools.predict CHECKPOINT IMAGE...``          (notebook 08)
- ``widgets``     interactive touches that degrade to plain output            (notebook 08)
- ``folder``      your own ImageFolder tree: checks, split, the whole recipe  (notebook 09)
- ``train_folder`` ``python -m tlhelpers.tools.train_folder DATA_DIR ...``           (notebook 09)
- ``fileio``      atomic writes for files saved whole (checkpoints, sidecars, uploads)
- ``run_course``  execute every notebook headless into ``build/``
"""

__version__ = "0.1.0"
