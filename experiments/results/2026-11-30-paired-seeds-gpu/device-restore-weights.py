# On the device: the fp16-carried weights back to an fp32 model.safetensors inside the package folder.
import sys
from safetensors.torch import load_file, save_file
sd = load_file(sys.argv[1])
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, sys.argv[2], metadata={"format": "pt"})
