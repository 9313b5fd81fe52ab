"""StrokeNet-TF: segmentation of ischaemic stroke lesions in CT perfusion (ISLES 2018).

Layout: a command, `python -m strokenet_tf.<command>`, is named for what it does (`train`, `evaluate`,
`predict`, `export`, `cross_validate`, `calibrate`, `serving_client`, `data.synthesize`) and holds only its
flags, flags -> config and `main`; its library is named for the activity (`training`, `evaluation`,
`prediction`, `serving.exporting`, `serving.client`, `cross_validation`, `calibration`, `data.synthesis`) and
never imports a command. Report tools (`baselines`, `data.difficulty`, `benchmarks.*`) are single modules.
Library errors name config fields (`errors.InputError`); `cli.fail` spells them as the command's flags.
"""

__version__ = "0.1.0"

from strokenet_tf import cli_startup as _cli_startup

if _cli_startup.started_as_entry_point():  # `python -m strokenet_tf.<tool>`: before any module imports TensorFlow
    _cli_startup.quiet_tensorflow()
