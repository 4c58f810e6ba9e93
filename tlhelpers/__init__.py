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
"""

__version__ = "0.1.0"
