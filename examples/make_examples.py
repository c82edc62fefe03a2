"""Write the quick-start example captures (synthetic traffic; no real capture is shipped with the project).

    python examples/make_examples.py
"""

from pathlib import Path

from pktnin.synth import write_synthetic_capture

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for name, packets, seed in (("office-mix.pcap", 600, 1), ("branch-site.pcap", 400, 2), ("night-batch.pcap", 250, 3)):
        print(write_synthetic_capture(HERE / name, packets=packets, seed=seed))
