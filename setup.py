"""Map the import package `specguard` onto the fixed top-level folders.

specguard -> core/, specguard.plugins -> plugins/, specguard.attest -> attest/,
specguard.policies -> policies/. Sub-packages are found by walking each folder, so
adding a folder with an __init__.py is all a new module needs; folders that hold only data
(roots/, presets/, data/) are listed too, so their files ship as package data.
"""

import os

from setuptools import setup

ROOTS = {
    "specguard": "core",
    "specguard.plugins": "plugins",
    "specguard.attest": "attest",
    "specguard.policies": "policies",
}

packages: list[str] = []
package_dir: dict[str, str] = {}
for package, folder in ROOTS.items():
    for root, _dirs, _files in os.walk(folder):
        if "__pycache__" in root:
            continue
        rel = os.path.relpath(root, folder)
        name = package if rel == "." else package + "." + rel.replace(os.sep, ".")
        packages.append(name)
        package_dir[name] = root

setup(packages=packages, package_dir=package_dir)
