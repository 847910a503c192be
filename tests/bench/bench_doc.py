"""Shared by the bench report scripts: rewrite one "## ..." section of
docs/BENCHMARKS.md, leaving every other section as it is."""


def replace_section(doc, heading, section):
    with open(doc) as f:
        text = f.read()
    start = text.find(heading)
    if start >= 0:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip("\n") + "\n" + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(doc, "w") as f:
        f.write(text)
