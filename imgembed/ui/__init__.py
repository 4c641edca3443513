"""The Streamlit app's views and what they share (``streamlit run app.py``). Only ``app.py``
imports them; the library never does."""
