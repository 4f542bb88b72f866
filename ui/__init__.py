"""The Streamlit chat over the course documents (`streamlit run ui/app.py`) and its helpers."""
