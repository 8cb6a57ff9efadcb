"""Lightning callbacks and plugins: speed switches, throughput, config saving, W&B media, portable SyncBN.

Each is enabled from YAML (see ``configs/overlays/``), never hard-wired into a model.
"""

from clapkit.callbacks.compile import ChannelsLast, TorchCompile
from clapkit.callbacks.config_saver import RunConfigSaver
from clapkit.callbacks.data_health import DataHealth
from clapkit.callbacks.last_checkpoint import LastCheckpoint
from clapkit.callbacks.resume import ExactResume
from clapkit.callbacks.sync_batchnorm import GlobalBatchNorm, PortableSyncBatchNorm
from clapkit.callbacks.throughput import Throughput
from clapkit.callbacks.wandb_media import WandbMedia

__all__ = [
    "ChannelsLast",
    "DataHealth",
    "ExactResume",
    "GlobalBatchNorm",
    "LastCheckpoint",
    "PortableSyncBatchNorm",
    "RunConfigSaver",
    "Throughput",
    "TorchCompile",
    "WandbMedia",
]
