"""Builds what pyproject.toml cannot declare: the Cython extensions and the gRPC stubs.

Every ``native/*.pyx`` becomes ``loadgate.native.<name>``; a module names its C sources with
a ``# distutils: sources = ...`` line.  Stubs are generated from ``proto/loadgate/v1/*.proto``
on every build and are never committed.
"""
import glob
import os
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def generate_grpc_stubs():
    # The virtual include path makes the generated imports read
    # "from loadgate.proto.loadgate.v1 import x_pb2", matching where the stubs are installed.
    protos = sorted(glob.glob(os.path.join("proto", "loadgate", "v1", "*.proto")))
    if not protos:
        return
    virtual = [p.replace("proto" + os.sep, "loadgate/proto/", 1) for p in protos]
    out = os.path.join(HERE, ".proto_build")
    os.makedirs(out, exist_ok=True)
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-Iloadgate/proto=proto",
           "--python_out=" + out, "--grpc_python_out=" + out, "--pyi_out=" + out] + virtual
    subprocess.run(cmd, check=True, cwd=HERE)
    generated = os.path.join(out, "loadgate", "proto", "loadgate", "v1")
    for name in os.listdir(generated):
        os.replace(os.path.join(generated, name), os.path.join(HERE, "proto", "loadgate", "v1", name))


def extensions():
    modules = []
    # LOADGATE_NATIVE_ONLY=_hdr,_engine limits a development build to the named modules.
    only = {n for n in os.environ.get("LOADGATE_NATIVE_ONLY", "").split(",") if n}
    for pyx in sorted(glob.glob(os.path.join("native", "*.pyx"))):
        name = os.path.splitext(os.path.basename(pyx))[0]
        if only and name not in only:
            continue
        modules.append(Extension(
            "loadgate.native." + name, [pyx],
            include_dirs=["native", numpy.get_include()],
            extra_compile_args=["-O3", "-Wno-unused-function"],
        ))
    # Cython finds a cimported module's .pxd by its package path, loadgate/native/..., which
    # the source tree spells native/: a link in the build folder supplies that path.
    include = os.path.join(HERE, ".proto_build", "cython-include")
    link = os.path.join(include, "loadgate", "native")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(os.path.join(HERE, "native"), link)
    return cythonize(modules, language_level=3, include_path=[include, "native"],
                     compiler_directives={"boundscheck": False, "wraparound": False})


os.chdir(HERE)
generate_grpc_stubs()
setup(ext_modules=extensions())
