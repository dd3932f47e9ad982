from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# A wheel carries the configs inside the package; a source checkout keeps them beside it.
CONF_DIR = PACKAGE_DIR / "conf" if (PACKAGE_DIR / "conf").is_dir() else PACKAGE_DIR.parent / "conf"
EMBEDDED_GLUE_DIR = PACKAGE_DIR / "data" / "glue"
EMBEDDED_SFT_DIR = PACKAGE_DIR / "data" / "instructions" / "arithmetic"
