from setuptools import find_packages, setup

setup(
    name="fairseq_ext",
    version="0.1.0",
    description="fairseq plugin: CLAP/ALiBi RoBERTa, GLOM, ELC-BERT and long-context LMs",
    packages=find_packages(include=["fairseq_ext", "fairseq_ext.*"]),
    python_requires=">=3.10",
    # fairseq comes from fairseq-fixed (see scripts/setup_env.sh); listing `fairseq` here
    # would make pip try the 0.12.2 sdist, which does not import on Python 3.11.
    install_requires=["torch", "sentencepiece", "omegaconf", "hydra-core"],
)
