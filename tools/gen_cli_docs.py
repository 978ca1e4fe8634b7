"""Render docs/cli.md from docs/cli.md.in: every ```console line starting with `$ fxgrad` is run for real.

    python tools/gen_cli_docs.py docs/cli.md.in > docs/cli.md

The commands run in a scratch copy of docs/tinynet/ (lines starting with `!` are hidden setup steps), against the
fxgrad of this checkout, so the pasted output is what a user sees today.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(tempfile.mkdtemp(prefix="fxgrad-docs-"), "tinynet")
shutil.copytree(os.path.join(REPO, "docs", "tinynet"), DOC)
env = {**os.environ, "PYTHONPATH": f"{DOC}{os.pathsep}{REPO}", "NO_COLOR": "1", "COLUMNS": "120"}

def run(cmdline: str) -> str:
    # cmdline: "fxgrad ARGS [| tail -n N]" or shell snippets prefixed with "!" (setup, not shown)
    shell = cmdline.replace("fxgrad ", f"{sys.executable} -m fxgrad ", 1)
    p = subprocess.run(shell, shell=True, executable="/bin/bash", cwd=DOC, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    out = p.stdout
    return out.rstrip("\n")

def render(template: str) -> str:
    out = []
    for block in re.split(r"(```console\n.*?```)", template, flags=re.S):
        if not block.startswith("```console"):
            out.append(block)
            continue
        lines = block[len("```console\n"):-3].rstrip("\n").splitlines()
        shown = []
        for line in lines:
            if line.startswith("!"):  # hidden setup
                subprocess.run(line[1:], shell=True, cwd=DOC, check=True)
                continue
            if line.startswith("$ "):
                cmd = line[2:]
                shown.append(line)
                shown.append(run(cmd))
            else:
                shown.append(line)
        out.append("```console\n" + "\n".join(shown) + "\n```")
    return "".join(out)

with open(sys.argv[1]) as f:
    template = f.read()
print(render(template))
