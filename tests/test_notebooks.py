"""The demo notebooks of projects/glide/demo: stored with their pictures, and run top to bottom.

Each notebook runs in a Jupyter kernel of this interpreter (a kernelspec written to a temporary
JUPYTER_PATH), with the steps of its ``parameters`` cell lowered to keep the suite fast; a cell that
raises fails the test with that cell's error.
"""
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / 'projects' / 'glide' / 'demo'
NOTEBOOKS = {path.stem: path for path in sorted(DEMO.glob('*.ipynb'))}
#: overrides the ``parameters`` cell, as papermill does: few steps per stage
FAST_PARAMETERS = 'STEPS, STEPS_UP = 3, 2'
KERNEL = 'glide-tests'


def test_the_three_demo_notebooks_are_there():
    assert set(NOTEBOOKS) == {'glide_text2im', 'glide_inpaint', 'glide_clip_guided'}


@pytest.fixture(scope='module')
def kernel(tmp_path_factory):
    """Name of a kernelspec that starts ``sys.executable`` (the project's venv)."""
    jupyter = tmp_path_factory.mktemp('jupyter')
    spec = jupyter / 'kernels' / KERNEL
    spec.mkdir(parents=True)
    (spec / 'kernel.json').write_text(json.dumps(dict(
        argv=[sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
        display_name=f'Python ({sys.executable})', language='python')))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('JUPYTER_PATH', str(jupyter))
        patch.setenv('JUPYTER_RUNTIME_DIR', str(jupyter / 'runtime'))
        patch.setenv('PYDEVD_DISABLE_FILE_VALIDATION', '1')
        yield KERNEL


def run_notebook(nb, kernel: str):
    """Execute ``nb`` in place from the demo folder; raises CellExecutionError on a failing cell."""
    NotebookClient(nb, kernel_name=kernel, timeout=600,
                   resources={'metadata': {'path': str(DEMO)}}).execute()
    return nb


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == 'code']


def pictures(cell) -> int:
    return sum('image/png' in out.get('data', {}) for out in cell.get('outputs', []))


def check_outputs(nb, name: str):
    """Every code cell ran, in order, without an error; every cell that displays a picture has it."""
    cells = code_cells(nb)
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), \
        f'{name}: not run top to bottom in one session (execution counts)'
    for cell in cells:
        assert not any(out.output_type == 'error' for out in cell.outputs), f'{name}: a cell failed'
        if 'display(' in cell.source:
            assert pictures(cell) == cell.source.count('display('), \
                f'{name}: the cell {cell.source[:60]!r}... has no picture'
    assert sum(map(pictures, cells)) >= 1


@pytest.mark.parametrize('name', sorted(NOTEBOOKS))
def test_stored_notebook_has_its_outputs(name):
    nb = nbformat.read(NOTEBOOKS[name], as_version=4)
    nbformat.validate(nb)
    check_outputs(nb, name)
    for cell in code_cells(nb):  # small inline PNGs only
        for out in cell.outputs:
            assert len(out.get('data', {}).get('image/png', '')) < 700_000, f'{name}: a picture over ~500 KB'


def with_fast_parameters(nb, name: str):
    """A copy of ``nb`` with a cell lowering the steps right after its ``parameters`` cell."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    tagged = [i for i, cell in enumerate(nb.cells) if 'parameters' in cell.metadata.get('tags', [])]
    assert len(tagged) == 1, f'{name}: needs exactly one cell tagged "parameters"'
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(FAST_PARAMETERS))
    for cell in code_cells(nb):
        cell.outputs, cell.execution_count = [], None
    return nb


@pytest.mark.parametrize('name', sorted(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(name, kernel):
    nb = with_fast_parameters(nbformat.read(NOTEBOOKS[name], as_version=4), name)
    check_outputs(run_notebook(nb, kernel), name)


def test_a_failing_cell_fails_with_its_error(kernel):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('x = 1'),
                                         nbformat.v4.new_code_cell("raise ValueError(f'broken cell {x}')"),
                                         nbformat.v4.new_code_cell('y = 2')])
    with pytest.raises(CellExecutionError) as failure:
        run_notebook(nb, kernel)
    assert (failure.value.ename, failure.value.evalue) == ('ValueError', 'broken cell 1')
    assert nb.cells[2].get('execution_count') is None  # nothing runs after the failing cell
