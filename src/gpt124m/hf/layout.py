"""What an exported directory is called and holds: its formats and the remote-code files.

Names only, no torch: the `export` command's flags are built from them without loading a model
library, so `gpt124m --help` stays instant.
"""

FORMATS = ("remote-code", "gpt2")
DEFAULT_REPO_ID = "USER/NAME"
REMOTE_FILES = ("configuration_gpt124m.py", "modeling_gpt124m.py")
NETWORK_FILE = "gpt124m_network.py"  # gpt124m/model.py, verbatim: the adapter's network
MODEL_TYPE = "gpt124m"
ARCHITECTURE = "GPT124MForCausalLM"
GPT2_ARCHITECTURE = "GPT2LMHeadModel"
AUTO_MAP = {
    "AutoConfig": "configuration_gpt124m.GPT124MConfig",
    "AutoModelForCausalLM": "modeling_gpt124m.GPT124MForCausalLM",
}
# Run artefacts the trainer leaves in a model directory; the card links the images.
ARTEFACTS = ("summary.json", "curves.png", "hellaswag.png")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
# Every name an export of either format may write, and nothing else: no folders.
EXPORT_FILES = frozenset(
    (
        "config.json",
        "model.safetensors",
        "README.md",
        "generation_config.json",
        *TOKENIZER_FILES,
        *REMOTE_FILES,
        NETWORK_FILE,
        *ARTEFACTS,
    )
)
