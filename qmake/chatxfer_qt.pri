# chatxfer with its Qt adapter (include/chatxfer_qt.h, chatxfer::QtTransfers)
# for qmake projects, instead of chatxfer.pri:
#
#   include(path/to/chatxfer/qmake/chatxfer_qt.pri)
#
# Everything chatxfer.pri does (cargo step, include paths, link line; its
# variables apply), plus the adapter's header (run through moc, as it has a
# Q_OBJECT) and source, compiled with the app's Qt 5 or 6 and C++ standard
# (C++11 is enough).
include($$PWD/chatxfer.pri)

QT *= core
HEADERS += $$CHATXFER_ROOT/include/chatxfer_qt.h
SOURCES += $$CHATXFER_ROOT/include/chatxfer_qt.cpp
