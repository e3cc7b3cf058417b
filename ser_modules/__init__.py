"""Speech emotion recognition on self-supervised speech models (Vesper and BAS recipes).

The package follows the flow of the project::

    corpus -> prepare (manifest CSV) -> audio pipeline -> upstream -> [feature cache]
      -> downstream -> metrics -> reports
"""

__version__ = "0.1.0"
