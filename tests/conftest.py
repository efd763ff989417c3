import os
import sys

# tests/ holds shared helpers (scenario_dsl) that tests in subfolders import too
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
