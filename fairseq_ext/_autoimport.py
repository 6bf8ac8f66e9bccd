"""Import every public module of a sub-package so its @register_* decorators run.

fairseq's own ``fairseq/models/__init__.py`` does the same; a new model, task or criterion
is one new file, with no list to edit.
"""
import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
    for info in sorted(pkgutil.iter_modules(package_path), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
