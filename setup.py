"""nidiff: score-based diffusion with non-isotropic (spectral / Gaussian Free Field) Gaussian noise."""

from setuptools import find_packages, setup

PACKAGES = ["sde_lib", "kernels", "models", "samplers", "training", "evaluation", "nidiff_cli"]

setup(
    name="nidiff",
    version="0.1.0",
    description="Score-SDE diffusion with non-isotropic Gaussian noise (GFF and any stationary spectrum)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=[f"{p}*" for p in PACKAGES]),
    py_modules=["run"],
    entry_points={"console_scripts": ["nidiff = nidiff_cli:main"]},
    install_requires=[
        "torch>=2.4",
        "torchvision",
        'triton; platform_system == "Linux"',
        "numpy",
        "scipy",
        "torchdiffeq",
        "clean-fid",
        "tqdm",
        "pillow",
        "scikit-learn",
        "tensorboard",
        "safetensors",
        "matplotlib",
        'tomli; python_version < "3.11"',
        "tomli-w",
    ],
    extras_require={
        "dev": ["pytest", "pytest-benchmark", "hypothesis", "ruff"],
    },
)
