"""Render src/ into dist/, stamping the title, commit and build time."""

import datetime
import os
import pathlib
import shutil

src = pathlib.Path("src")
dist = pathlib.Path("dist")
shutil.rmtree(dist, ignore_errors=True)
dist.mkdir()
title = os.environ.get("SITE_TITLE", "buildq demo")
commit = os.environ.get("BUILDQ_COMMIT", "unknown")[:12]
built = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
for path in sorted(src.rglob("*")):
    target = dist / path.relative_to(src)
    if path.is_dir():
        target.mkdir(exist_ok=True)
    elif path.suffix == ".html":
        html = path.read_text("utf-8")
        html = html.replace("{{title}}", title).replace("{{commit}}", commit)
        target.write_text(html.replace("{{built}}", built), "utf-8")
    else:
        shutil.copyfile(path, target)
    print(f"built {target}")
print(f"demo site ready: {title} at commit {commit}")
