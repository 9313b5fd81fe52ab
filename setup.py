"""StrokeNet-TF: 3D residual segmentation of ischaemic stroke lesions in CT perfusion."""

from setuptools import find_packages, setup

setup(
    name="strokenet_tf",
    version="0.1.0",
    description="StrokeNet in TensorFlow/Keras 3: stroke lesion segmentation in CT perfusion (ISLES 2018).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["strokenet_tf", "strokenet_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.15",
        # TF 2.21 no longer pulls in tensorboard, and tf.summary fails without it.
        "tensorboard>=2.21,<2.22",
        "numpy>=1.26",
        "nibabel>=5.2",
        "scikit-image>=0.22",
        # PNG montages (predict); scikit-image pulls it in too, but predict imports it directly.
        "pillow>=10",
        "scipy>=1.11",
        "absl-py>=2.1",
        # The MNI ICBM152 grey/white-matter template of the synthetic data ships inside nilearn's wheel (read from
        # its data folder; nilearn is never imported and nothing is downloaded).
        "nilearn>=0.10",
    ],
    extras_require={
        "cpu": ["tensorflow-cpu>=2.21,<2.22"],
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
        "test": ["pytest>=8", "medpy>=0.5"],
        # TF-Serving export and client. tensorflow-serving-api itself depends on the full `tensorflow` wheel
        # (which would replace tensorflow-cpu), so the Makefile installs it with --no-deps; it needs only
        # grpcio and protobuf at run time, which TensorFlow already brings.
        "serving": ["grpcio>=1.60"],
    },
)
