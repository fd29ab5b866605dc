"""Install script for rlhf_jax."""
import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent
REQUIREMENTS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setuptools.setup(
    name="rlhf_jax",
    version="0.1.0",
    description="JAX-native, pure-functional RLHF: SFT, reward models, PPO/GRPO/RLOO, DPO, best-of-N.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["rlhf_jax", "rlhf_jax.*"]),
    install_requires=REQUIREMENTS,
    extras_require={
        "test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "nbformat>=5.9,<6", "nbclient>=0.10,<1", "ipykernel>=6.29,<8"],
    },
)
