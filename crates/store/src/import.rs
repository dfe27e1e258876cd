//! Importers of other tools' credential files (being written).
